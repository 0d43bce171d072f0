import sys

from hpcdiff.distributed.preempt import catch_early

catch_early(sys.argv[1:])  # before the imports: stop signals may come right after the start
from hpcdiff.cli import main  # noqa: E402

sys.exit(main())
