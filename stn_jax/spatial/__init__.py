"""The spatial-transformer library: grid generators (grids), the bilinear / nearest / bicubic sampler (sampling),
transforms and their parameters (transforms), dense flows (flows), transforms fitted to points (fitting), the argument
checks they share (_validation) and the CPU kernels (cpu_kernels, csrc/). Pure functions of arrays, channels-last; it
imports only jax and numpy. `stn_jax` re-exports its public names."""
