"""Check a SemanticKITTI SSC test-server zip before uploading it.

Repeats the checks of semantic-kitti-api's validate_submission.py --task completion (explicit directory entries
sequences/, sequences/XX/, sequences/XX/predictions/ for every test sequence 11-21; one predictions/NNNNNN.label per
test voxels/NNNNNN.bin found under DATA_ROOT; 4,194,304 bytes each; no other files except a root description.txt)
and also checks that every voxel holds a valid raw label id. DATA_ROOT must hold all test sequences 11-21, or the
zip's completeness cannot be verified (an error); --partial checks only the test sequences present there. Lists
every problem, one per line; exit status 0 only when valid.

examples:
  ssckit validate-submission submission.zip --data /data/semantic_kitti/dataset
  ssckit validate-submission demo_output/submission.zip --data demo_data --partial
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "check a SemanticKITTI SSC submission zip (layout, sizes, raw label ids)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zip", type=Path, metavar="ZIP", help="the submission .zip")
    parser.add_argument("--data", required=True, type=Path, metavar="DATA_ROOT",
                        help="SemanticKITTI root holding sequences/11..21/voxels/*.bin")
    parser.add_argument("--partial", action="store_true",
                        help="check only the test sequences present under DATA_ROOT (the server needs all 11-21)")
    parser.add_argument("--no-id-check", action="store_true",
                        help="skip reading every file to check label ids (the official validator does not)")


def run(args: argparse.Namespace) -> int:
    from ssckit.data.labels import SEMANTIC_KITTI
    from ssckit.errors import SsckitError
    from ssckit.submission import TEST_SEQUENCES, expected_test_frames, validate_submission

    if not args.zip.is_file():
        raise SsckitError(f"{args.zip}: file not found")
    present = [s for s in TEST_SEQUENCES if s in expected_test_frames(args.data)]
    if args.partial:
        print(f"partial check: only test sequences {', '.join(present) or '(none)'} found under {args.data} are "
              "checked for completeness; the server needs all of 11-21")
    problems = validate_submission(args.zip, args.data, SEMANTIC_KITTI, check_ids=not args.no_id_check,
                                   progress=True, partial=args.partial)
    if problems:
        for line in problems:
            print(line)
        print(f"{args.zip}: {len(problems)} problem{'s' if len(problems) != 1 else ''} found; not ready to submit")
        return 1
    if args.partial:
        print(f"{args.zip}: valid for test sequences {', '.join(present)} (partial check; not verified complete)")
    else:
        print(f"{args.zip}: valid; ready for submission")
    return 0
