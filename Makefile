# Targets are documented by their `## ` comment; `make` alone lists them.
.DEFAULT_GOAL := help
.PHONY: help install typecheck format test test-one chaos demo bench clean

help: ## list targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

install: node_modules/.package-lock.json ## install dependencies (npm ci) if node_modules is missing or package-lock.json is newer

# npm ci rewrites node_modules/.package-lock.json, so its age tracks the lockfile's.
node_modules/.package-lock.json: package-lock.json
	npm ci
	@touch $@

typecheck: install ## type-check everything with tsc, and check the formatting
	npx tsc --noEmit -p tsconfig.json
	npx prettier --check "src/**/*.ts" "test/**/*.ts" "bench/**/*.ts"

format: install ## format the TypeScript sources with prettier
	npx prettier --write "src/**/*.ts" "test/**/*.ts" "bench/**/*.ts"

test: install typecheck ## run all tests against throwaway Postgres + MariaDB servers
	node --import tsx test/run.ts

test-one: install ## run one test file: make test-one FILE=test/foo.test.ts [SEGMENTER_TEST_NAME=regex]
	@test -n "$(FILE)" || { echo "usage: make test-one FILE=test/foo.test.ts" >&2; exit 2; }
	node --import tsx test/run.ts $(FILE)

chaos: install ## run the fault tests CHAOS_RUNS times each (default 3) on fresh servers and print a table of outcomes
	node --import tsx test/chaos.ts $(CHAOS_RUNS)

demo: install ## run the demo (src/demo.ts)
	node --import tsx src/demo.ts

bench: install ## run every bench/*.ts
	@set -e; for f in bench/*.ts; do [ -e "$$f" ] || continue; echo "== $$f"; node --import tsx "$$f"; done

clean: ## remove build output and leftover test/bench artifacts
	rm -rf dist bench/results .test-servers
