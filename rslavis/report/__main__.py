"""``python -m rslavis.report RUN_DIR [--out report.html]`` or ``python -m rslavis.report RUN_A RUN_B``."""

import argparse
import logging
import sys

from rslavis.common.errors import RslavisError


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m rslavis.report",
        description="Write the HTML report of a run folder, or compare two run folders.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run folder (report) or two (comparison)")
    p.add_argument("--out", default=None, help="output HTML file (default: report.html in the run folder, "
                   "compare_<B>.html in RUN_A for a comparison)")
    p.add_argument("--max-images", type=int, default=48, help="gallery size cap (default 48)")
    p.add_argument("--parser", default=None, help="caption parser for the object analysis (default: hybrid; rules, spacy, ...)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if len(args.runs) > 2:
        p.error(f"give one run folder (a report) or two (a comparison), got {len(args.runs)}.")
    if args.max_images < 1:
        p.error(f"--max-images must be >= 1, got {args.max_images}.")
    from rslavis.common.logger import setup_logging

    setup_logging()
    from rslavis.report import write_comparison, write_report

    try:
        if len(args.runs) == 1:
            out = write_report(args.runs[0], args.out, parser=args.parser, max_images=args.max_images)
        else:
            out = write_comparison(args.runs[0], args.runs[1], args.out, parser=args.parser, max_images=args.max_images)
    except RslavisError as exc:
        if args.debug:
            raise
        print(f"rslavis: error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("rslavis.report").info("wrote %s", out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
