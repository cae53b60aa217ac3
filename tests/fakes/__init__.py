"""The one set of fakes every test tier shares (issue 11): clock, runner, host tree, PCI."""
