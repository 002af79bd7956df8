#!/usr/bin/env bash
# Source this at the start of a GPU-machine call (no package registry there): installs the carried
# wheels (.whl: click, rich, matplotlib, ...) aside in /tmp/site and edgeports itself (editable, no deps) into
# the machine's python, so `edgeports` and `import edgeports.exporters` work as after `make install`.
#   carry: [".whl", ".whlplot"]   command: source benchmarks/gpu_setup.sh && ...
set -e
# .whl: click, rich and the small ones; .whlplot: matplotlib and fonttools (apart, so .whl fits beside a
# 53 MB onnxruntime-gpu part in one call). /tmp/site persists while the machine stays warm.
for d in .whl .whlplot; do
  if [ -d $d ] && ls $d/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $d/*.whl
  fi
done
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/edgeports-install.log 2>&1 \
  || { cat /tmp/edgeports-install.log; exit 1; }
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PYTHONUNBUFFERED=1
set +e
python3 -c "import torch, edgeports.kernels as k; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print(k.available_impls())"
