# Sourced by the README commands: create .venv on first use and install the project with its test extra.
# The install is redone only when pyproject.toml changes (a stamp in .venv records the one installed).
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.installed-pyproject
if ! cmp -s pyproject.toml "$stamp"; then
  .venv/bin/python -m pip install -q -e ".[test]"
  cp pyproject.toml "$stamp"
fi
source .venv/bin/activate
# Tests and demos run on the CPU; keep JAX from grabbing a GPU's memory if one is present.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
