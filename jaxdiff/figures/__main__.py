"""python -m jaxdiff.figures [PATH]: the schedules figure, no config needed."""
import sys

from jaxdiff.figures import forward

print(forward.plot_schedules(sys.argv[1] if len(sys.argv) > 1
                             else "schedules.png"))
