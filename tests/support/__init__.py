"""Helpers the tests share (imported as ``tests.support.<module>``; pyproject's pytest ``pythonpath`` puts the
repository root on the path): render cases, the Debian 13 readers, the security test host, stack fixtures."""
