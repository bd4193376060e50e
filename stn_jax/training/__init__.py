"""The trainer: the loop (train), the jitted steps (steps), the device input feed (feed), checkpoints and workdirs
(checkpoints), metrics and event files (metrics), the optimiser (optim), devices and hosts (distributed), configs
(config_lib), figures, the entry points' shared command-line handling (cli, errors) and small helpers (utils).
The entry points are stn_jax.main and stn_jax.predict."""
