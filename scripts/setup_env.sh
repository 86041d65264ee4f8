# Sourced by the README commands: create .venv on first use and install the project with its test extra.
# Re-running is cheap: pip only checks that everything is present.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e ".[test]"
source .venv/bin/activate
# Tests and demos run on the CPU; keep JAX from grabbing a GPU's memory if one is present.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
