#!/usr/bin/env bash
# tidy.sh runs `go mod tidy` in every module of the workspace (go.work; the
# tools module keeps its own workflow, `go get -tool` with
# -modfile=tools/go.mod), points go.work's replace directives at the version
# the modules require, and records in go.work.sum the hashes a workspace
# build needs beyond the modules' go.sum files.
#
# Usage: scripts/tidy.sh [VERSION]
#
# The nested modules require the core, and each other, at the version to be
# released next: a real version, so that they install once it is tagged, but
# one that no module proxy has before then, so a plain `go mod tidy` in a
# nested module fails to download it. For each nested module this script
# therefore adds a replace directive for every module of the repository
# (pointing at its directory), tidies, drops those directives again, and sets
# every requirement on a module of the repository to VERSION (tidy writes the
# zero pseudo-version for one newly imported). VERSION defaults to the
# version the nested go.mod files require now; give another to prepare the
# next release (see docs/releasing.md). No go.sum line for a module of the
# repository is written: its hash exists only once it is tagged.
#
# go.work replaces each required module of the repository, at that version,
# with its directory: adding a module to a workspace does not stop the go
# command from reading the go.mod of the version other modules require, which
# no proxy has before the tag.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
root=$(pwd)
core=$(awk '$1 == "module" { print $2; exit }' go.mod)

# Every module of the repository: the directories of tracked (or new, not
# ignored) go.mod files, testdata excluded.
mapfile -t dirs < <(git ls-files --cached --others --exclude-standard -- 'go.mod' '*/go.mod' |
	grep -v '/testdata/' | xargs -n1 dirname | sort -u)
declare -A path
for d in "${dirs[@]}"; do
	path[$d]=$(awk '$1 == "module" { print $2; exit }' "$d/go.mod")
done

# in_repo_requires DIR prints "path version" for each requirement of DIR's
# go.mod on a module of the repository.
in_repo_requires() {
	(cd "$1" && GOWORK=off "$GO" mod edit -json) |
		awk -v core="$core" '
			/"Path":/ { gsub(/[",]/, "", $2); p = $2 }
			/"Version":/ { gsub(/[",]/, "", $2); if (p == core || index(p, core "/") == 1) print p, $2 }'
}

version=${1:-}
if [ -z "$version" ]; then
	version=$(for d in "${dirs[@]}"; do in_repo_requires "$d"; done | awk '{ print $2 }' | sort -u)
	if [ "$(printf '%s\n' "$version" | wc -l)" -ne 1 ] || [ -z "$version" ]; then
		echo "tidy.sh: the nested go.mod files require different versions of this repository's modules ($(echo $version)): give one as the argument" >&2
		exit 1
	fi
fi

for d in "${dirs[@]}"; do
	[ "$d" = tools ] && continue
	echo "tidy: $d"
	if [ "$d" = . ]; then
		GOWORK=off "$GO" mod tidy
		continue
	fi
	replaces=() drops=()
	for o in "${dirs[@]}"; do
		[ "$o" = "$d" ] || [ "$o" = tools ] && continue
		rel=$(realpath --relative-to="$root/$d" "$root/$o")
		case $rel in .*) ;; *) rel=./$rel ;; esac
		replaces+=("-replace=${path[$o]}=$rel")
		drops+=("-dropreplace=${path[$o]}")
	done
	(
		cd "$d"
		GOWORK=off "$GO" mod edit "${replaces[@]}"
		trap 'GOWORK=off "$GO" mod edit "${drops[@]}"' EXIT
		GOWORK=off "$GO" mod tidy
	)
	for r in $(in_repo_requires "$d" | awk '{ print $1 }'); do
		(cd "$d" && GOWORK=off "$GO" mod edit "-require=$r@$version")
	done
done

# go.work: replace every module of the repository that another requires,
# at VERSION, with its directory. The versions are set in place, keeping the
# file's layout and comments (go work edit would rewrite both); go work edit
# only adds or drops a replacement when the set of required modules changed.
replacements() {
	"$GO" work edit -json | awk '
		/"Old":/ { o = 1; p = ""; v = ""; next }
		o && /"Path":/ { gsub(/[",]/, "", $2); p = $2 }
		o && /"Version":/ { gsub(/[",]/, "", $2); v = "@" $2 }
		o && /}/ { print p v; o = 0 }' | sort
}
core_re=$(printf '%s' "$core" | sed 's/[.]/[.]/g')
sed -E -i "s#^([[:space:]]*(replace[[:space:]]+)?$core_re(/[^[:space:]]*)?[[:space:]]+)v[^[:space:]]+([[:space:]]+=>)#\1$version\4#" go.work
required=$(for d in "${dirs[@]}"; do in_repo_requires "$d"; done | awk '{ print $1 }' | sort -u)
wanted=$(for r in $required; do echo "$r@$version"; done | sort)
edits=()
for r in $(comm -23 <(replacements) <(printf '%s\n' "$wanted")); do
	edits+=("-dropreplace=$r")
done
for r in $(comm -13 <(replacements) <(printf '%s\n' "$wanted")); do
	p=${r%@*}
	for d in "${dirs[@]}"; do
		if [ "${path[$d]}" = "$p" ]; then
			rel=./$d
			[ "$d" = . ] && rel=./
			edits+=("-replace=$r=$rel")
		fi
	done
done
if [ ${#edits[@]} -gt 0 ]; then
	"$GO" work edit "${edits[@]}"
fi

# The workspace's build list can hold a version that no single module's
# go.sum covers (the highest of several requirements); loading every package
# of the workspace records those hashes in go.work.sum.
modules=$(for d in "${dirs[@]}"; do [ "$d" = tools ] || echo "./$d/..."; done)
"$GO" list -deps -test $modules >/dev/null
echo "tidy: done (modules of the repository at $version)"
