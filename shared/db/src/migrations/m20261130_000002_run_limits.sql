-- Every run is bounded (processes and disk join CPUs, memory and time), and every node says
-- the largest run it accepts, so that SubmitRun can refuse a run no node could ever take and a
-- runner never claims a run larger than itself. NULL limits of a run take the claiming node's
-- defaults; NULL limits of a node (a runner older than this migration) admit nothing larger
-- than what other nodes say.
ALTER TABLE runs
    ADD COLUMN processes_limit integer CHECK (processes_limit > 0),
    ADD COLUMN disk_limit      bigint  CHECK (disk_limit > 0);

ALTER TABLE nodes
    ADD COLUMN max_cpus          integer CHECK (max_cpus > 0),
    ADD COLUMN max_memory        bigint  CHECK (max_memory > 0),
    ADD COLUMN max_processes     integer CHECK (max_processes > 0),
    ADD COLUMN max_disk          bigint  CHECK (max_disk > 0),
    ADD COLUMN max_time_seconds  bigint  CHECK (max_time_seconds > 0);
