"""Write a snapshot of every control-plane row of a database to a file:
python3 tests/upgrade/snapshot.py DBNAME OUT.json (scripts/upgrade_test.sh
takes one before the update and one before the dump)."""

import sys

from common import snapshot, su, write_json

if __name__ == "__main__":
    dbname, out = sys.argv[1], sys.argv[2]
    with su(dbname) as c:
        snap = snapshot(c)
    write_json(out, snap)
    print(f"snapshot of {dbname}: " + ", ".join(f"{t.split('.')[-1]} {v['count']}" for t, v in snap.items()))
