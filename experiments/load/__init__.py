"""What a trial sends and how: workloads, sessions, the in-process and HTTP load generators."""
