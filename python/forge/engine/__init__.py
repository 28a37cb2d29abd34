"""Engine services that run beside the supervisor's arbiter (node registry, and later rescue, pruning, cron)."""
