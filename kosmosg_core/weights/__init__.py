"""Weight files, model-independent: the restricted unpickler for ``.pt`` files, page-aligned host
memory and fast casting, and int8 weight-only quantization. Imports only the shared modules
(errors, safe_files), never a model package."""
