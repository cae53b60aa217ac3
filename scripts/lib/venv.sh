# Sourced by scripts/demo, scripts/test and scripts/bench (from the repository root):
# set up what is missing (scripts/setup), then run everything in the project venv, as
# `. .venv/bin/activate` would: its python first on PATH, so `python3`, `sys.executable`
# and the dev tools it installed (ruff, kubectl, hadolint, kubernetes-validate) are its own.
if ! scripts/setup --check; then  # it says what is missing
  echo "==> setting up (scripts/setup)" >&2
  setup_started=$SECONDS
  scripts/setup
  echo "==> set up in $((SECONDS - setup_started)) s" >&2
fi
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
unset PYTHONHOME
