"""Running jobs: specs and steps, submission, the step runner, confirmations, watching a job."""
