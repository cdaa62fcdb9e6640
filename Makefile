# The whole set-up on a fresh Debian/Ubuntu machine, as root:
#   make test    install, start libvirtd + tiny QEMU guests + InfluxDB, run every test layer, tear down
#   make demo    run the acquisition playbook against localhost (DEMO_BACKEND=test: libvirt's test driver)
#   make bench   benchmarks (by hand; writes docs/performance.md)
#   make lock    rewrite service/requirements.lock and tests/requirements.lock from their .in files
DEMO_BACKEND ?= qemu

.PHONY: test demo bench lock install sanity lint units integration service-tests build up down

test:
	bash tests/run.sh all

demo:
	bash tests/demo.sh $(DEMO_BACKEND)

bench:
	bash bench/run.sh

lock:
	bash tests/stack/lock.sh

install:
	bash tests/stack/stack.sh install

up:
	bash tests/stack/stack.sh up

down:
	bash tests/stack/stack.sh down

sanity units integration lint build:
	bash tests/run.sh $@

service-tests:
	bash tests/run.sh service
