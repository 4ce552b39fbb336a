-- Partitions of the aggregate id space that live instances share a worker's work by
-- (src/projection/leader/role.rs, `partition_of`): the id's last byte, modulo 32.
CREATE FUNCTION chronicle_partition(id uuid) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN get_byte(uuid_send(id), 15) % 32;
