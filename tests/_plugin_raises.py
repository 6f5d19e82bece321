"""A plugin whose import fails with something other than ImportError (tests/test_bad_inputs.py)."""

raise RuntimeError("plugin set-up failed: RSLAVIS_TEST_TOKEN is not set")
