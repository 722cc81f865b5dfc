#!/usr/bin/env bash
# Installs Dapr's official SDKs, pinned, for the tests that run them
# unchanged against dialbackd (tests/tests/dapr_sdks.rs, programs in
# tests/sdk/), and caches them. Prints one line per SDK asked for, in the
# order asked: its name and its directory.
#
#   scripts/sdks.sh            # js and py:  "js DIR" then "py DIR"
#   scripts/sdks.sh js         # the JavaScript SDK only: DIR/node_modules/@dapr/dapr
#   scripts/sdks.sh py         # the Python SDK only: a venv, DIR/bin/python
#   scripts/sdks.sh go         # the Go SDK's program tests/sdk/go, built: DIR/sdkcheck
#   scripts/sdks.sh java       # the Java SDK's classpath: DIR/classpath
#
# The cache is ~/.cache/dialback/sdks/{js,py,go,java} (DIALBACK_CACHE moves
# it). The JavaScript SDK is npm's @dapr/dapr (needs node 18+ and npm), the
# Python SDK is PyPI's dapr in a venv of its own (needs python3 3.10+ with
# its venv module), the Go SDK is github.com/dapr/go-sdk as tests/sdk/go's
# go.mod pins it (needs go 1.24+; Go's module proxy), the Java SDK is Maven
# Central's io.dapr:dapr-sdk as tests/sdk/java/pom.xml pins it (needs java
# 17+ and mvn; Maven's local repository keeps the jars). The first call
# downloads them (about a minute each); later calls print the paths at
# once. When a tool is missing, one line on stderr says which, and the exit
# code is 2.
set -euo pipefail

js_version="3.18.0" # @dapr/dapr, the newest 3.x
py_version="1.19.0" # dapr, the newest 1.x
cache="${DIALBACK_CACHE:-$HOME/.cache/dialback}/sdks"
root="$(cd "$(dirname "$0")/.." && pwd)"

want=("$@")
[ "${#want[@]}" -gt 0 ] || want=(js py)
for w in "${want[@]}"; do
  case "$w" in
    js | py | go | java) ;;
    *)
      echo "scripts/sdks.sh: unknown SDK '$w' (js, py, go or java)" >&2
      exit 64
      ;;
  esac
done

# A stamp names what a directory holds; it is written last, so a directory
# without the right one is (re)installed.
js_stamp="@dapr/dapr@$js_version"
py_stamp="dapr==$py_version"
# The Go program and the Java classpath follow the files that pin them.
digest() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
go_stamp="go $(digest "$root"/tests/sdk/go/go.mod "$root"/tests/sdk/go/go.sum "$root"/tests/sdk/go/*.go)"
java_stamp="java $(digest "$root/tests/sdk/java/pom.xml")"
fresh() { [ "$(cat "$cache/$1/.dialback-sdk" 2>/dev/null)" = "$2" ]; }
# Installed, and runnable here: node on the PATH, the venv's python alive.
usable() {
  case "$1" in
    js) fresh js "$js_stamp" && command -v node >/dev/null 2>&1 ;;
    py) fresh py "$py_stamp" && "$cache/py/bin/python" -c 'import dapr' >/dev/null 2>&1 ;;
    go) fresh go "$go_stamp" && [ -x "$cache/go/sdkcheck" ] ;;
    java) fresh java "$java_stamp" && command -v java >/dev/null 2>&1 && [ -s "$cache/java/classpath" ] ;;
  esac
}

missing() {
  case "$1" in
    js)
      if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "node and npm (Node.js 18 or newer)"
      elif ! node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' 2>/dev/null; then
        echo "Node.js 18 or newer (node is $(node --version))"
      fi
      ;;
    py)
      if ! command -v python3 >/dev/null 2>&1; then
        echo "python3 (3.10 or newer, with its venv module)"
      elif ! python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        echo "python3 3.10 or newer ($(python3 --version 2>&1))"
      elif ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo "python3's venv module with ensurepip (Debian: apt-get install python3-venv)"
      fi
      ;;
    go)
      if ! command -v go >/dev/null 2>&1; then
        echo "go (1.24 or newer, https://go.dev/dl/)"
      fi
      ;;
    java)
      if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
        echo "java (17 or newer) and mvn (Debian: apt-get install openjdk-17-jdk-headless maven)"
      elif ! java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then
        echo "java 17 or newer ($(java -version 2>&1 | head -1))"
      fi
      ;;
  esac
}

install_js() {
  local dir="$cache/js"
  usable js && return 0
  echo "scripts/sdks.sh: installing $js_stamp into $dir (once)" >&2
  mkdir -p "$dir"
  rm -f "$dir/.dialback-sdk"
  npm install --prefix "$dir" --save-exact --no-audit --no-fund --loglevel=error "$js_stamp" >&2
  echo "$js_stamp" >"$dir/.dialback-sdk"
}

install_py() {
  local dir="$cache/py"
  usable py && return 0
  echo "scripts/sdks.sh: installing $py_stamp into the venv $dir (once)" >&2
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$py_stamp" >&2
  echo "$py_stamp" >"$dir/.dialback-sdk"
}

install_go() {
  local dir="$cache/go"
  usable go && return 0
  echo "scripts/sdks.sh: building tests/sdk/go with the Go SDK its go.mod pins into $dir (once)" >&2
  mkdir -p "$dir"
  rm -f "$dir/.dialback-sdk"
  (cd "$root/tests/sdk/go" && go build -mod=readonly -o "$dir/sdkcheck" .) >&2
  echo "$go_stamp" >"$dir/.dialback-sdk"
}

install_java() {
  local dir="$cache/java"
  usable java && return 0
  echo "scripts/sdks.sh: resolving the Java SDK tests/sdk/java/pom.xml pins, classpath into $dir (once)" >&2
  mkdir -p "$dir"
  rm -f "$dir/.dialback-sdk"
  mvn -q -B -Dstyle.color=never -f "$root/tests/sdk/java/pom.xml" dependency:build-classpath -Dmdep.outputFile="$dir/classpath" >&2
  echo "$java_stamp" >"$dir/.dialback-sdk"
}

# Everything missing, in one line, before anything is installed.
lacking=()
for w in "${want[@]}"; do
  usable "$w" && continue
  m=$(missing "$w")
  [ -z "$m" ] || lacking+=("$m")
done
if [ "${#lacking[@]}" -gt 0 ]; then
  joined="${lacking[0]}"
  for m in "${lacking[@]:1}"; do joined="$joined; and $m"; done
  echo "scripts/sdks.sh: cannot run Dapr's SDKs here: missing $joined" >&2
  exit 2
fi

# Fast path: all installed, no lock taken.
all=1
for w in "${want[@]}"; do usable "$w" || all=0; done
if [ "$all" = 1 ]; then
  for w in "${want[@]}"; do echo "$w $cache/$w"; done
  exit 0
fi

# One install at a time (test binaries may ask at once); the second waits
# and finds it done.
mkdir -p "$cache"
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
for w in "${want[@]}"; do
  "install_$w"
  echo "$w $cache/$w"
done
