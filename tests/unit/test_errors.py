from agent import errors


def test_exit_codes_follow_the_documented_table():
    table = {
        errors.ConfigError: 2, errors.NotATargetNode: 3, errors.PreflightError: 4,
        errors.DownloadError: 5, errors.InstallError: 6, errors.VerifyError: 7,
        errors.LockHeldError: 8, errors.UnhealthyError: 9, errors.HostCommandError: 1,
    }
    for cls, code in table.items():
        assert cls.exit_code == code, cls


def test_line_joins_message_and_remedy():
    err = errors.PreflightError("Secure Boot is on", remedy="disable it in the VM settings")
    assert err.line() == "Secure Boot is on; disable it in the VM settings"
    assert errors.InstallError("boom").line() == "boom"


def test_host_command_error_carries_the_process_facts():
    err = errors.HostCommandError(["apt-get", "install", "x"], 100, "", "E: one\nE: two\n")
    assert err.argv == ("apt-get", "install", "x")
    assert err.returncode == 100
    assert "`apt-get install x` exited 100: E: one | E: two" in err.line()


def agent_error_classes(cls=errors.AgentError):
    for sub in cls.__subclasses__():
        yield sub
        yield from agent_error_classes(sub)


def test_every_error_class_and_cli_code_is_a_row_of_the_one_table():
    documented = {code for codes, _ in errors.EXIT_CODES for code in codes}
    for cls in agent_error_classes():
        if cls is not errors.Terminated:  # 128 + the signal, an instance attribute
            assert cls.exit_code in documented, cls
    assert {errors.OK, errors.BUG, errors.INTERRUPTED, 128 + 15} <= documented
    assert errors.exit_meaning(errors.Terminated(15, "SIGTERM").exit_code).startswith("stopped")
    assert errors.exit_meaning(77) == "undocumented"
