"""The job service: a FIFO queue with one or more workers, persisted in SQLite, resumable after a crash.

- `service`: `JobService`, the protocol every face uses; `manager`: `JobManager`, its implementation (the queue
  and its workers)
- `prepare`: a request checked once at submit, as the `PreparedJob` a worker runs
- `executor`: where a job runs (`LocalExecutor`: in this process); `farm`: the workers' settings (`--gpus`,
  `--executor`); `ray_executor`: Ray render workers (imported only when chosen)
- `events`: the job events, one pydantic model per kind; `bus`: their subscribers
- `errors`: exception -> error kind -> HTTP status, for jobs and the API; `names`: output names reserved at submit
- `store`: the SQLite job database (with each job's lease); `checkpoints`: section latents for resume; `backup`:
  the database backup
- `models`: `Job` and its parts; `hooks`: what a host sees of the jobs
"""
