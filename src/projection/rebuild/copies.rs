//! The copies a rebuild loads: a projector's tables recreated in the schema
//! `chronicle_next_<projection>`, shaped like the live ones (columns, defaults, checks,
//! indexes, keys among them, triggers, grants), and swapped in for them.
//!
//! A copy takes the live table's name in its own schema, so the projector's SQL (which
//! names its tables unqualified) writes to the copies on a connection whose `search_path`
//! starts with that schema, and to the live tables everywhere else.

use sqlx::PgConnection;

/// Where a projector's copies live.
pub(super) fn schema(projection: &str) -> String {
    format!("chronicle_next_{projection}")
}

/// Where the replaced live tables go for the moment of the swap (dropped with it).
fn retired(projection: &str) -> String {
    format!("chronicle_retired_{projection}")
}

/// One of a projector's tables.
struct Table {
    schema: String,
    name: String,
}

impl Table {
    /// `schema.table`, or `table` in `public`.
    fn parse(listed: &str) -> Self {
        let (schema, name) = listed.split_once('.').unwrap_or(("public", listed));
        Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }

    fn live(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    fn copy(&self, projection: &str) -> String {
        qualified(&schema(projection), &self.name)
    }
}

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quoted(schema), quoted(name))
}

/// The identifier as PostgreSQL prints it: plain when it is lower case, else quoted.
fn quoted(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A projector's tables and their copies.
pub(super) struct Copies {
    projection: String,
    tables: Vec<Table>,
    /// Indexes besides the unique ones that the projector needs while loading.
    apply_indexes: Vec<String>,
}

/// What the catalog says about the live tables, as statements for the copies.
#[derive(Default)]
struct Definitions {
    /// Unique indexes, their constraints, and the indexes loading needs.
    early: Vec<String>,
    /// Every other index: built once the copies have caught up.
    late: Vec<String>,
}

impl Copies {
    /// The copies of `tables` (a projector's, parents first) for `projection`.
    pub(super) fn new(projection: &str, tables: &[&str], apply_indexes: &[&str]) -> Self {
        Self {
            projection: projection.to_owned(),
            tables: tables.iter().map(|t| Table::parse(t)).collect(),
            apply_indexes: apply_indexes.iter().map(|&i| i.to_owned()).collect(),
        }
    }

    /// Creates the copies, empty, with what loading needs (unique indexes and keys, the
    /// indexes the projector names, foreign keys among them, triggers, grants), replacing
    /// any left by an earlier attempt. Runs in the caller's transaction.
    ///
    /// # Errors
    /// Any database error; a foreign key from another table into these is one (the swap
    /// would have to drop it).
    pub(super) async fn create(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let schema = schema(&self.projection);
        execute(conn, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
        execute(conn, &format!("CREATE SCHEMA {schema}")).await?;
        for table in &self.tables {
            execute(
                conn,
                &format!(
                    "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                     INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE
                     INCLUDING COMMENTS INCLUDING COMPRESSION)",
                    table.copy(&self.projection),
                    table.live()
                ),
            )
            .await?;
        }
        let definitions = self.definitions(conn).await?;
        for statement in definitions.early {
            execute(conn, &statement).await?;
        }
        Ok(())
    }

    /// Builds the copies' remaining indexes and gathers their statistics, so that they
    /// answer queries as the live tables do from the moment they are swapped in.
    ///
    /// # Errors
    /// Any database error.
    pub(super) async fn finish(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let definitions = self.definitions(conn).await?;
        for statement in definitions.late {
            // Idempotent: a runner that finds them built (an earlier try) goes on.
            let statement = statement.replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1);
            execute(conn, &statement).await?;
        }
        for table in &self.tables {
            execute(conn, &format!("ANALYZE {}", table.copy(&self.projection))).await?;
        }
        Ok(())
    }

    /// Puts the copies in the live tables' place, in the caller's transaction, and drops
    /// the old tables. Views over the live tables are recreated over the copies with their
    /// grants. Waits at most the transaction's `lock_timeout` for readers of the live
    /// tables.
    ///
    /// # Errors
    /// Any database error (a lock timeout among them: nothing changed, try again).
    pub(super) async fn swap(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let retired = retired(&self.projection);
        let views = self.dependent_views(conn).await?;
        for view in &views {
            execute(conn, &format!("DROP VIEW {}", view.name)).await?;
        }
        execute(conn, &format!("DROP SCHEMA IF EXISTS {retired} CASCADE")).await?;
        execute(conn, &format!("CREATE SCHEMA {retired}")).await?;
        for table in &self.tables {
            let moves = [
                format!("ALTER TABLE {} SET SCHEMA {retired}", table.live()),
                format!(
                    "ALTER TABLE {} SET SCHEMA {}",
                    table.copy(&self.projection),
                    quoted(&table.schema)
                ),
            ];
            for statement in moves {
                execute(conn, &statement).await?;
            }
        }
        for view in views {
            let statements = [format!("CREATE VIEW {} AS {}", view.name, view.definition)]
                .into_iter()
                .chain(view.grants);
            for statement in statements {
                execute(conn, &statement).await?;
            }
        }
        execute(conn, &format!("DROP SCHEMA {retired} CASCADE")).await?;
        self.drop(conn).await
    }

    /// Locks the live tables for the rest of the transaction, against readers and writers:
    /// within the transaction's `lock_timeout`, or it fails and nothing changed.
    ///
    /// # Errors
    /// Any database error (a lock timeout among them).
    pub(super) async fn lock_live(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let live: Vec<String> = self.tables.iter().map(Table::live).collect();
        let statement = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live.join(", "));
        execute(conn, &statement).await
    }

    /// Drops the copies (a failed or abandoned rebuild's).
    ///
    /// # Errors
    /// Any database error.
    pub(super) async fn drop(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let schema = schema(&self.projection);
        execute(conn, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
    }
}

/// A view over a live table, to recreate over its copy.
struct View {
    name: String,
    definition: String,
    grants: Vec<String>,
}

impl Copies {
    fn live_names(&self) -> (Vec<String>, Vec<String>) {
        self.tables
            .iter()
            .map(|t| (t.schema.clone(), t.name.clone()))
            .unzip()
    }

    /// Rewrites a definition naming live tables to name their copies instead.
    fn to_copies(&self, definition: &str) -> String {
        self.tables
            .iter()
            .fold(definition.to_owned(), |sql, table| {
                let (live, copy) = (table.live(), table.copy(&self.projection));
                sql.replace(&format!(" ON {live} "), &format!(" ON {copy} "))
                    .replace(&format!("TABLE {live} "), &format!("TABLE {copy} "))
                    .replace(
                        &format!("REFERENCES {live}("),
                        &format!("REFERENCES {copy}("),
                    )
            })
    }

    /// The live tables' indexes, keys, foreign keys, triggers and grants as statements
    /// for the copies. The catalog is read with only `pg_catalog` on the path, so that
    /// every name it prints is qualified.
    async fn definitions(&self, conn: &mut PgConnection) -> Result<Definitions, sqlx::Error> {
        execute(conn, "SET LOCAL search_path = pg_catalog").await?;
        let read = self.read_definitions(conn).await;
        execute(conn, "SET LOCAL search_path TO DEFAULT").await?;
        read
    }

    async fn read_definitions(&self, conn: &mut PgConnection) -> Result<Definitions, sqlx::Error> {
        let (schemas, names) = self.live_names();
        let outside: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(format('%s references %s', conrelid::regclass, confrelid::regclass), ', ')
               FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.confrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE k.contype = 'f'
                AND (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
                AND k.conrelid NOT IN (
                    SELECT c2.oid FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
                     WHERE (n2.nspname, c2.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])))",
        )
        .bind(&schemas)
        .bind(&names)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(outside) = outside {
            return Err(sqlx::Error::Protocol(format!(
                "foreign keys from outside the projection into its tables: {outside}"
            )));
        }
        let rows: Vec<(i32, String, String, bool, String)> = sqlx::query_as(CATALOG)
            .bind(&schemas)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await?;
        let mut definitions = Definitions::default();
        for (_, kind, name, unique, definition) in rows {
            let copied = self.to_copies(&definition);
            let early = kind != "index" || unique || self.apply_indexes.contains(&name);
            if early {
                definitions.early.push(copied);
            } else {
                definitions.late.push(copied);
            }
        }
        Ok(definitions)
    }

    /// A digest of the live tables' definitions: their columns, and everything copied
    /// from the catalog (indexes, keys, triggers, grants, comments). A change between the
    /// making of the copies and the swap is a migration the swap would undo.
    pub(super) async fn live_shape(&self, conn: &mut PgConnection) -> Result<String, sqlx::Error> {
        execute(conn, "SET LOCAL search_path = pg_catalog").await?;
        let (schemas, names) = self.live_names();
        let shape = sqlx::query_scalar(&format!(
            "SELECT md5(
                coalesce((SELECT string_agg(d.kind || ' ' || d.statement, E'\\n'
                                            ORDER BY d.kind, d.statement)
                            FROM ({CATALOG}) d), '')
                || coalesce((SELECT string_agg(format('%I.%I %I %s %s %s', n.nspname,
                                                      c.relname, a.attname,
                                                      format_type(a.atttypid, a.atttypmod),
                                                      a.attnotnull,
                                                      pg_get_expr(f.adbin, f.adrelid)),
                                               E'\\n' ORDER BY n.nspname, c.relname, a.attnum)
                               FROM pg_attribute a
                               JOIN pg_class c ON c.oid = a.attrelid
                               JOIN pg_namespace n ON n.oid = c.relnamespace
                               LEFT JOIN pg_attrdef f
                                      ON f.adrelid = a.attrelid AND f.adnum = a.attnum
                              WHERE (n.nspname, c.relname)
                                    IN (SELECT * FROM unnest($1::text[], $2::text[]))
                                AND a.attnum > 0 AND NOT a.attisdropped), ''))"
        ))
        .bind(&schemas)
        .bind(&names)
        .persistent(false)
        .fetch_one(&mut *conn)
        .await;
        execute(conn, "SET LOCAL search_path TO DEFAULT").await?;
        shape
    }

    /// The views over the live tables, with their definitions and grants (names qualified).
    async fn dependent_views(&self, conn: &mut PgConnection) -> Result<Vec<View>, sqlx::Error> {
        execute(conn, "SET LOCAL search_path = pg_catalog").await?;
        let (schemas, names) = self.live_names();
        let rows: Result<Vec<(String, String, Vec<String>)>, sqlx::Error> = sqlx::query_as(VIEWS)
            .bind(&schemas)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await;
        execute(conn, "SET LOCAL search_path TO DEFAULT").await?;
        Ok(rows?
            .into_iter()
            .map(|(name, definition, grants)| View {
                name,
                definition,
                grants,
            })
            .collect())
    }
}

/// The live tables' indexes, the key constraints they back, foreign keys, triggers, grants
/// and comments, in the order they can be created: (step, kind, name, unique, statement).
const CATALOG: &str = "
WITH t AS (
    SELECT c.oid, c.relname, c.relowner, c.relacl, format('%I.%I', n.nspname, c.relname) AS live
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[])))
SELECT * FROM (
    SELECT 1 AS step, 'index' AS kind, ic.relname::text AS name, i.indisunique AS is_unique,
           pg_get_indexdef(i.indexrelid) AS statement
      FROM t JOIN pg_index i ON i.indrelid = t.oid JOIN pg_class ic ON ic.oid = i.indexrelid
    UNION ALL
    SELECT 2, 'key', k.conname::text, true,
           format('ALTER TABLE %s ADD CONSTRAINT %I %s USING INDEX %I', t.live, k.conname,
                  CASE k.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, ic.relname)
      FROM t JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype IN ('p', 'u')
      JOIN pg_class ic ON ic.oid = k.conindid
    UNION ALL
    SELECT 3, 'foreign key', k.conname::text, true,
           format('ALTER TABLE %s ADD CONSTRAINT %I ', t.live, k.conname)
           || pg_get_constraintdef(k.oid)
      FROM t JOIN pg_constraint k ON k.conrelid = t.oid AND k.contype = 'f'
    UNION ALL
    SELECT 4, 'trigger', g.tgname::text, true, pg_get_triggerdef(g.oid)
      FROM t JOIN pg_trigger g ON g.tgrelid = t.oid AND NOT g.tgisinternal
    UNION ALL
    SELECT 5, 'grant', t.relname::text, true,
           format('GRANT %s ON %s TO %s', a.privilege_type, t.live,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                       ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
      FROM t CROSS JOIN LATERAL aclexplode(t.relacl) a WHERE a.grantee <> t.relowner
    UNION ALL
    SELECT 6, 'comment', t.relname::text, true,
           format('COMMENT ON TABLE %s IS %L', t.live, obj_description(t.oid, 'pg_class'))
      FROM t WHERE obj_description(t.oid, 'pg_class') IS NOT NULL) definitions
 ORDER BY step";

/// Views over the live tables: (qualified name, definition, grant statements).
const VIEWS: &str = "
SELECT format('%I.%I', vn.nspname, v.relname), pg_get_viewdef(v.oid),
       coalesce((SELECT array_agg(format('GRANT %s ON %I.%I TO %s', a.privilege_type,
                                         vn.nspname, v.relname,
                                         CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                              ELSE quote_ident(pg_get_userbyid(a.grantee)) END))
                   FROM aclexplode(v.relacl) a WHERE a.grantee <> v.relowner), '{}')
  FROM pg_class v JOIN pg_namespace vn ON vn.oid = v.relnamespace
 WHERE v.relkind = 'v' AND v.oid IN (
       SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
         JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
          AND r.ev_class <> c.oid)
 ORDER BY 1";

/// Runs one statement, unprepared (each is run once).
pub(super) async fn execute(conn: &mut PgConnection, statement: &str) -> Result<(), sqlx::Error> {
    sqlx::query(statement)
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}
