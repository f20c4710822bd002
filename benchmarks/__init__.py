"""What the pipeline cannot express, built on the harness: host cost and launch
plans of the fast path (CPU, GPU stubbed), and short GPU probes that time single
kernels and host costs (per-kernel profiles, queued calls). Everything the
pipeline can express is an experiment (conf/experiment/), e.g. fast_elfatt."""
