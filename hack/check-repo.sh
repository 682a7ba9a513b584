#!/usr/bin/env bash
# Repository hygiene, run by `make test` (and so by CI):
#   - no tracked file is larger than 1 MiB;
#   - no tracked file is an executable binary or a compiled archive
#     (ELF, PE, Mach-O, WebAssembly, ar/Go archives);
#   - no tracked symlink points outside the repository or at an absolute path
#     (a worktree's .tools link, once committed, replaced the tool folder of
#     every checkout with a link to itself);
#   - go.mod and go.sum are tidy (`go mod tidy -diff` prints nothing).
# Build outputs belong in the git-ignored bin/, .tools/ and out/.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=$((1024 * 1024))
bad=0
while IFS= read -r -d '' f; do
	[ -f "$f" ] || continue # deleted in the work tree, not yet committed
	size=$(stat -c %s "$f")
	if [ "$size" -gt "$limit" ]; then
		echo "check-repo: $f is $size bytes (limit 1 MiB): keep large or generated files out of git" >&2
		bad=1
	fi
	magic=$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')
	case $magic in
	7f454c46*) kind=ELF ;;
	4d5a*) kind="PE (Windows)" ;;
	feedface* | feedfacf* | cefaedfe* | cffaedfe* | cafebabe*) kind=Mach-O ;;
	0061736d*) kind=WebAssembly ;;
	213c617263683e0a*) kind="ar archive" ;;
	*) kind= ;;
	esac
	if [ -n "$kind" ]; then
		echo "check-repo: $f is an executable binary ($kind): build outputs go to bin/ (git-ignored)" >&2
		bad=1
	fi
done < <(git ls-files -z)
while read -r mode _ _ f; do
	[ "$mode" = 120000 ] || continue
	target=$(git cat-file -p "$(git rev-parse ":$f")")
	case $target in
	/* | ../* | */../*)
		echo "check-repo: $f is a symlink to $target, outside the repository: do not commit it" >&2
		bad=1
		;;
	esac
done < <(git ls-files -s)
if ! diff=$(go mod tidy -diff 2>&1); then
	echo "check-repo: go.mod/go.sum are not tidy; run 'go mod tidy':" >&2
	echo "$diff" >&2
	bad=1
fi
[ "$bad" = 0 ] && echo "check-repo: OK ($(git ls-files | wc -l) tracked files, none over 1 MiB or binary; go.mod tidy)"
exit "$bad"
