"""Start ComfyUI's real ``main.py`` server from a ComfyUI tree: ``python serve_comfy.py ROOT [main.py flags]``.

Two adjustments, both for the vendored test host (see shared docs, comfyui.md §7.5): argument
parsing is switched on before anything imports ``comfy.cli_args``, and the host's own
``extra_model_paths.yaml`` (it names a folder that does not exist) is skipped.
"""

import os
import runpy
import sys


def main() -> None:
    root = os.path.abspath(sys.argv[1])
    sys.argv = [os.path.join(root, "main.py"), *sys.argv[2:]]  # before comfy.cli_args parses it
    sys.path.insert(0, root)
    import comfy.options

    comfy.options.enable_args_parsing()
    import utils.extra_config as extra_config

    vendored = os.path.realpath(os.path.join(root, "extra_model_paths.yaml"))
    load = extra_config.load_extra_path_config

    def load_but_the_vendored_one(path, *args, **kwargs):
        if os.path.realpath(path) != vendored:
            return load(path, *args, **kwargs)

    extra_config.load_extra_path_config = load_but_the_vendored_one
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
