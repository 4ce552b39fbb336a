-- Nobody connects to this database or makes temporary tables in it unless granted: the
-- analytics role is shared by every Chronicle database of a server, so an analyst it was
-- granted to could otherwise read every one of them. `chronicle analytics grant <login>`
-- grants CONNECT on this database alone, with per-database timeouts for the login. (A
-- database this migration does not own keeps its privileges, with a notice.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_database
                WHERE datname = current_database()
                  AND pg_has_role(current_user, datdba, 'MEMBER')) THEN
        EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC',
                       current_database());
    ELSE
        RAISE NOTICE 'not the owner of database %: CONNECT and TEMPORARY stay as they are',
                     current_database();
    END IF;
END $$;
