"""What a trial measures: the local engine, replicas, external and started servers."""
