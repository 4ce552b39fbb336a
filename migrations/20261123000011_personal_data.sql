-- Crypto-shredding of personal data. Each subject (a learner, a patient) has a data key, wrapped under
-- a key derived from the server pepper; events hold only ciphertext of personal fields.
CREATE TABLE subject_keys
(
    subject_ref text        PRIMARY KEY,
    wrapped     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Whose personal data each aggregate holds: the subject reference inside the sealed field
-- of the event that names the subject, recorded by its append (an import of the log too).
-- `element` 0 is the aggregate's one subject (a simulation's learner); n > 0 the subject of
-- its n-th element (a transfer job's task n).
CREATE TABLE aggregate_subjects
(
    aggregate_type text    NOT NULL,
    aggregate_id   text    NOT NULL,
    element        integer NOT NULL,
    subject_ref    text    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, element)
);
CREATE INDEX aggregate_subjects_subject ON aggregate_subjects (subject_ref);

-- A sealed value is chr(1) || 'sealed:v1:' || kind || ':' || subject || ':' || ciphertext.
CREATE FUNCTION record_aggregate_subject() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    naming text;
    task   jsonb;
    n      integer := 0;
BEGIN
    IF NEW.event_type = 'SimulationCreated' THEN
        naming := NEW.payload -> 'Created' -> 'spec' ->> 'learner_id';
        IF left(naming, 11) = chr(1) || 'sealed:v1:' THEN
            INSERT INTO aggregate_subjects (aggregate_type, aggregate_id, element, subject_ref)
            VALUES (NEW.aggregate_type, NEW.aggregate_id, 0, split_part(naming, ':', 4))
            ON CONFLICT DO NOTHING;
        END IF;
    ELSIF NEW.event_type = 'TransferJobCreated' THEN
        FOR task IN SELECT jsonb_array_elements(NEW.payload -> 'Created' -> 'spec' -> 'tasks')
        LOOP
            n := n + 1;
            naming := task ->> 'patient_id';
            IF left(naming, 11) = chr(1) || 'sealed:v1:' THEN
                INSERT INTO aggregate_subjects (aggregate_type, aggregate_id, element, subject_ref)
                VALUES (NEW.aggregate_type, NEW.aggregate_id, n, split_part(naming, ':', 4))
                ON CONFLICT DO NOTHING;
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER aggregate_subject_recorded
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.sequence = 1)
EXECUTE FUNCTION record_aggregate_subject();

-- Subjects whose keys were destroyed; their later data is stored erased.
CREATE TABLE forgotten_subjects
(
    subject_ref  text        PRIMARY KEY,
    forgotten_at timestamptz NOT NULL
);

-- `SubjectForgotten` destroys the key in the transaction that records it.
CREATE FUNCTION forget_subject() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    DELETE FROM subject_keys WHERE subject_ref = NEW.aggregate_id;
    INSERT INTO forgotten_subjects (subject_ref, forgotten_at)
    VALUES (NEW.aggregate_id, (NEW.payload -> 'Forgotten' ->> 'at')::timestamptz)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER subject_forgotten
    AFTER INSERT
    ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Subject' AND NEW.event_type = 'SubjectForgotten')
EXECUTE FUNCTION forget_subject();
