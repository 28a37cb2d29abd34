"""A test-only hook that freezes the supervisor's loop as issue 12's full pipe did, by a log write.

Imported as an app module, it gives the arbiter's logger a handler of its own (as an app may: the supervisor's
log queue covers only the handlers logs.configure installs) writing to the FIFO named by FORGE_TEST_FROZEN_LOG,
which the test has filled and does not read: the loop's next line on that logger (a job that raised) blocks it
until the test drains the FIFO, while the core's thread runs on. Without the variable it does nothing.
"""

import logging
import os

FROZEN_LOG = "FORGE_TEST_FROZEN_LOG"

if FROZEN_LOG in os.environ:
    logging.getLogger("forge.arbiter").addHandler(logging.StreamHandler(open(os.environ[FROZEN_LOG], "w")))
