import inspect

from agent.install.kit import Kit, real_kit

# The keyword arguments the pipeline, plan and uninstall pass to each collaborator.
KEYWORDS = {
    "unload_stale": {"want_version"},
    "ensure_build_deps": {"lock_wait"},
    "recommended_type": {"timeout"},
    "run_installer": {"timeout"},
    "verify": {"module_version", "module_type"},
    "lock": {"wait", "timeout"},
}


def test_real_kit_fills_every_field_with_a_callable():
    kit = real_kit()
    for name in Kit.__dataclass_fields__:
        assert callable(getattr(kit, name)), name


def test_real_collaborators_take_the_keywords_the_flow_passes():
    kit = real_kit()
    for name, words in KEYWORDS.items():
        params = inspect.signature(getattr(kit, name)).parameters
        assert words <= set(params), (name, sorted(params))
