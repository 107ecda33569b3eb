"""``python -m vadpipe.cli``."""

from vadpipe.cli.main import main
import vadpipe.cli  # noqa: F401  (registers the commands)

if __name__ == "__main__":
    main()
