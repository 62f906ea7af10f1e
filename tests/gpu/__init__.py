"""The GPU suite (issue 17): mmviz on a CUDA device, in float32 and bfloat16, split over two devices, model untouched.

Every test here is marked ``gpu`` and skipped unless ``torch.cuda.is_available()``; ``MMVIZ_GPU_DEVICE=cpu pytest
tests/gpu`` runs the same tests with the CPU standing in for the accelerator (a dry run of the tests' own logic and
tolerances, not of a GPU). On a bare GPU machine ``bash scripts/gpu-check.sh`` installs what it lacks from the
wheels ``bash scripts/gpu-wheels.sh`` downloaded, then runs this suite and ``benchmarks/gpu.py``.

Nothing here imports a package the bare GPU machine lacks (hypothesis, playwright, jupyter): torch, numpy,
transformers, accelerate (``importorskip``) and mmviz.
"""
