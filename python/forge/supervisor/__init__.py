"""The supervisor process: arbiter (main loop), zygote (fork server), workers and their protocol."""
