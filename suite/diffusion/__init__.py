"""What ``workload=diffusion`` builds on: diffusers denoisers from a config
(``models``) and their self-attention cores swapped through diffusers'
attention-processor API (``swap``). diffusers is an optional extra
(``pip install -e ".[diffusion]"``) imported only when a model is built."""
