//! `schema.graphql` is the served schema's SDL. Locally a drift rewrites the file (and fails,
//! so the change is seen); in CI it fails with the command that regenerates it.

#[test]
fn schema_graphql_matches_the_served_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let served = chronicle::api::sdl();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == served {
        return;
    }
    if std::env::var_os("CI").is_some() {
        panic!("schema.graphql is stale: run `cargo run -- schema > schema.graphql` and commit it");
    }
    std::fs::write(&path, served).expect("write schema.graphql");
    panic!("schema.graphql was stale and has been rewritten: review and commit it");
}
