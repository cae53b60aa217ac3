"""The loaded driver as the host describes it: module state, nvidia-smi, install record."""
