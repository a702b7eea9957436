"""Operations: health, heartbeats, doctor, smoke, metrics, logs, traces and worker processes."""
