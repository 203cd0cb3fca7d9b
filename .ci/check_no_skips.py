"""python .ci/check_no_skips.py REPORT.xml: exit 1 if the pytest JUnit report holds a skipped (or xfail) test, listing
each with its reason. CI gives the tests every stand-in they can use, so a skip there is a test that should have run
and did not: a green run must mean that every test passed."""
import sys
import xml.etree.ElementTree as ElementTree

cases = list(ElementTree.parse(sys.argv[1]).getroot().iter("testcase"))
skipped = [(f"{case.get('classname')}::{case.get('name')}", skip.get("message", ""))
           for case in cases for skip in case.iter("skipped")]
for name, reason in skipped:
    print(f"SKIPPED {name}: {reason}", file=sys.stderr)
if not cases or skipped:
    sys.exit(f"{sys.argv[1]}: {len(skipped)} of {len(cases)} tests skipped; CI allows none (see the reasons above)")
print(f"{sys.argv[1]}: {len(cases)} tests, none skipped")
