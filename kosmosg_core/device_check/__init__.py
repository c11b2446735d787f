"""The prepared GPU check (``scripts/device_check.sh``): real sizes, random weights, one JSON.

``python -m kosmosg_core.device_check --out DIR [--tiny]`` runs the sections one after another,
each in its own process under a wall-time budget (:mod:`.orchestrator`), and rewrites
``DIR/device_check.json`` after every section, so a run that is killed still leaves what it measured.
``--tiny`` runs the same code at tiny sizes on the CPU (tests/test_device_check.py), so it cannot rot.

Sections: ``env`` (machine and versions), ``cuda_tests`` (``pytest -m cuda``), ``kosmosg`` (load time,
VRAM, encode latency per dtype), ``comfy`` (SD 1.5 generation inside ComfyUI with CLIPTextEncode vs
KosmosGEncode, and under a VRAM cap) and ``gill`` (OPT-6.7B tokens per second, with and without the KV
cache, 8-bit and 4-bit).
"""
