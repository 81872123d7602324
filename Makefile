# Shortcuts; the README's commands are the reference.
.PHONY: test demo up down status lint ci

test:  ## the README's test command (starts Kafka + Redis itself if they are not running)
	python3 -m pytest -q

demo:  ## workers, synthetic events and live stats on the local services
	streaminfer demo

up:  ## real Kafka (KRaft) + Redis on 127.0.0.1
	bash deploy/local/services.sh up

down:
	bash deploy/local/services.sh down

status:
	bash deploy/local/services.sh status

lint:
	ruff check .

ci:  ## what CI runs (as root, installs packages)
	bash .ci/run
