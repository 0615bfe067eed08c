# ngx_http_sf_oauth_module
#
#   make          build build/ngx_http_sf_oauth_module.so for Debian's nginx
#   make test     install what is missing, build, run t/*.t with prove
#   make run      start nginx with conf.example against the mock Salesforce
#                 (or a real org when the SF_* variables are set)
#   make deb      build build/deb/libnginx-mod-http-sf-oauth_<version>_<arch>.deb
#   make NGINX_VERSION=1.28.3 test-other-nginx
#                 build nginx 1.28.3 from its release sources and the module
#                 against it under build/nginx-1.28.3/, run t/*.t with them

NGINX       ?= /usr/sbin/nginx
NGINX_SRC   ?= /usr/share/nginx/src
BUILD       := build
MODULE      := $(BUILD)/ngx_http_sf_oauth_module.so
OBJS        := $(BUILD)/nginx/objs

DEB_PACKAGES := nginx nginx-dev libcurl4-openssl-dev libcjson-dev libssl-dev \
                libpcre2-dev zlib1g-dev gcc make perl python3 curl procps \
                ca-certificates nghttp2-client openssl \
                libnginx-mod-http-image-filter libxml2-dev python3-zeep \
                python3-grpcio python3-protobuf \
                redis-server redis-sentinel libhiredis-dev prometheus faketime

# make deb and t/33-deb.t: debian/control's Build-Depends, the build tools,
# lintian
DEB_PACKAGES += build-essential debhelper dpkg-dev fakeroot lintian \
                libhiredis-dev

# the real browser of t/55-browser-*.t (headless Chromium through selenium),
# installed without their recommends: those start daemons (avahi, upower)
# and bring systemd, none of which a headless browser needs
BROWSER_PACKAGES := chromium chromium-driver python3-selenium

SOURCES := config ngx_http_sf_oauth_module.c $(wildcard src/*.c src/*.h)

.PHONY: all deps node-deps test test-valgrind fuzz fuzz-deps bench run deb clean \
        other-deps other-nginx test-other-nginx

all: $(MODULE)

# $(call install-missing,PACKAGES[,APT-OPTIONS]): installs those of the
# Debian PACKAGES that are missing; nothing when all are there.
install-missing = missing=""; \
	for p in $(1); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	        | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) \
	        $$missing >/dev/null || exit 1; \
	fi

deps:
	@$(call install-missing,$(DEB_PACKAGES))
	@$(call install-missing,$(BROWSER_PACKAGES),--no-install-recommends)

# jsforce, the Node.js client the SOAP and Bulk tests run, into
# build/node (outside git); Debian's nodejs and npm when there is no npm.
node-deps:
	@command -v npm >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm \
	    >/dev/null; }
	@sh t/lib/install-node-deps.sh

# nginx's configure tree from nginx-dev, configured with the flags Debian's
# binary was built with, so that the module's signature matches it.
# A plain nginx source tree (NGINX_SRC=DIR: a release tarball's, or a git
# checkout with auto/configure) has no conf_flags: it is configured with
# --with-compat, which is what lets a module built from the same version's
# sources load into that version's nginx.
$(OBJS)/Makefile: config | deps
	@[ -f $(NGINX_SRC)/conf_flags ] || [ -f $(NGINX_SRC)/configure ] \
	    || [ -f $(NGINX_SRC)/auto/configure ] || { echo "make:" \
	    "NGINX_SRC=$(NGINX_SRC) is not an nginx source tree (no configure" \
	    "or auto/configure): give the directory of nginx's release sources" \
	    "of the version that runs (nginx -V)" >&2; exit 1; }
	rm -rf $(BUILD)/nginx
	mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(BUILD)/nginx
	cd $(BUILD)/nginx && \
	if [ -f conf_flags ]; then \
	    bash -c '. ./conf_flags && \
	        ./configure "$${NGX_CONF_FLAGS[@]}" \
	            --add-dynamic-module=$(CURDIR)'; \
	else \
	    cfg=./configure; [ -x $$cfg ] || cfg=./auto/configure; \
	    $$cfg --with-compat --with-http_ssl_module \
	        --add-dynamic-module=$(CURDIR); \
	fi > ../configure.log 2>&1 \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(OBJS)/Makefile $(SOURCES)
	$(MAKE) -C $(BUILD)/nginx -f objs/Makefile modules
	@# a new inode: a running nginx keeps the old file mapped intact
	cp $(OBJS)/ngx_http_sf_oauth_module.so $@.tmp && mv -f $@.tmp $@

# t/lib/harness.pl runs t/*.t TEST_JOBS at a time (the tests that install
# packages or build nginx after them, alone), then prints the ten slowest
# files; TESTS=... runs only those files
TEST_JOBS   ?= 4
VALGRIND_JOBS ?= 3
TESTS       ?=

test: deps node-deps $(MODULE)
	TEST_JOBS=$(TEST_JOBS) perl t/lib/harness.pl $(TESTS)

# the same suite with every nginx process under valgrind
test-valgrind: deps node-deps $(MODULE)
	@command -v valgrind >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind \
	    >/dev/null; }
	SF_TEST_VALGRIND=1 TEST_JOBS=$(VALGRIND_JOBS) perl t/lib/harness.pl \
	    $(TESTS)

# libFuzzer targets for the token response parser, the state file reader,
# the SOAP envelope rewriter and the error-body verdict (CometD's too), built with clang, ASan and UBSan against a small stand-in for
# nginx's core (fuzz/ngx_shim.c); each runs FUZZ_TIME seconds from the seed
# corpus in fuzz/corpus (copied, so that the run adds nothing to the tree).
FUZZ_TIME   ?= 60
FUZZ_CC     := clang
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined \
               -fno-sanitize-recover=undefined \
               $(addprefix -I $(BUILD)/nginx/,src/core src/event \
                   src/event/modules src/os/unix objs src/http \
                   src/http/modules src/http/v2) -I src \
               -I /usr/include/libxml2
FUZZ_LIBS   := -lcjson -lcrypto -lxml2 -lz

FUZZ_SRCS   := fuzz/ngx_shim.c src/ngx_http_sf_oauth_parse.c \
               src/ngx_http_sf_oauth_url.c \
               src/ngx_http_sf_oauth_codec.c \
               src/ngx_http_sf_oauth_envelope.c \
               src/ngx_http_sf_oauth_inflate.c \
               src/ngx_http_sf_oauth_answer.c \
               src/ngx_http_sf_oauth_verdict.c \
               src/ngx_http_sf_oauth_bayeux.c \
               src/ngx_http_sf_oauth_send.c
FUZZ_TARGETS := parse state envelope verdict

$(BUILD)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_SRCS) $(wildcard src/*.h) \
                 | $(OBJS)/Makefile
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_$*.c $(FUZZ_SRCS) $(FUZZ_LIBS)

fuzz-deps: deps
	@dpkg-query -W -f='$${Status}' libclang-rt-14-dev 2>/dev/null \
	    | grep -q "install ok installed" && command -v $(FUZZ_CC) \
	    >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang \
	    libclang-rt-14-dev >/dev/null; }

# Every target runs, even after another's crash; the crash's input goes to
# $(BUILD)/crash-*, and the exit status is 1 if any target failed.
fuzz: fuzz-deps $(addprefix $(BUILD)/fuzz_,$(FUZZ_TARGETS))
	failed=""; for t in $(FUZZ_TARGETS); do \
	    rm -rf $(BUILD)/corpus-$$t && cp -r fuzz/corpus/$$t \
	        $(BUILD)/corpus-$$t && \
	    $(BUILD)/fuzz_$$t -max_total_time=$(FUZZ_TIME) -max_len=70000 \
	        $$(test -f fuzz/$$t.dict && echo -dict=fuzz/$$t.dict) \
	        -artifact_prefix=$(BUILD)/ \
	        -print_final_stats=1 $(BUILD)/corpus-$$t \
	        || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed"; exit 1; fi

# interleaved wrk A/B rounds of every API family (REST, SOAP, Bulk 1.0,
# $$cred over 1,000 credentials, redis=) and an A/A control, a revoke storm
# per family, a 50 MB deploy's RSS and the Prometheus scrape; writes
# bench/results.md (about 11 minutes; BENCH=all adds the soak and the
# fleet storm)
bench: deps $(MODULE)
	@command -v wrk >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
	    >/dev/null; }
	perl bench/bench.pl

run: deps $(MODULE)
	./run.sh

# The Debian package, the way Debian builds its own nginx modules: a copy
# of the sources with debian/ in build/deb/src, dpkg-buildpackage there
# (dh with dh-sequence-nginx), the .deb in build/deb.  The version is the
# one of debian/changelog's first entry, and nowhere else.
DEB_NAME    := libnginx-mod-http-sf-oauth
# (the .deb's name has no epoch)
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([0-9]*:\)\{0,1\}\([^)]*\)).*/\2/p' \
                   debian/changelog)
DEB_ARCH    := $(shell dpkg --print-architecture)
DEB_DIR     := $(BUILD)/deb
DEB         := $(DEB_DIR)/$(DEB_NAME)_$(DEB_VERSION)_$(DEB_ARCH).deb

deb: $(DEB)

$(DEB): $(SOURCES) README.md conf.example $(wildcard docs/*.md) \
        $(shell find debian -type f) | deps
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/src
	cp -r --parents $(SOURCES) README.md conf.example docs debian \
	    $(DEB_DIR)/src/
	cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc \
	    > ../build.log 2>&1 || { tail -30 ../build.log; exit 1; }
	@echo "make deb: $@"
# -- another nginx: nginx.org's stable and mainline, Debian 13's ----------
#
#   make NGINX_VERSION=1.28.3 other-nginx       nginx and the module
#   make NGINX_VERSION=1.28.3 test-other-nginx  and t/*.t with them
#
# nginx VERSION's release sources go to build/nginx-VERSION/src: nginx.org's
# tarball, or, with NGINX_GIT=DIR (a clone of github.com/nginx/nginx, bare or
# not) or NGINX_GIT=URL, the tag release-VERSION (no network needed with a
# local clone).  They are configured with --with-compat, --with-debug (the
# tests read debug logs) and the modules the tests use, image_filter dynamic
# as in Debian, plus the module; build/nginx-VERSION/ then holds the nginx
# binary and modules/ the two .so files.  The suite runs without
# t/08-make-run.t, which tests `make run`, and t/33-deb.t, which tests the
# package: both are Debian's nginx.
NGINX_VERSION ?=
NGINX_GIT     ?=
OTHER         := $(BUILD)/nginx-$(NGINX_VERSION)
OTHER_SRC     := $(OTHER)/src
OTHER_FLAGS   := --with-compat --with-debug --with-threads --with-pcre-jit \
                 --error-log-path=stderr \
                 --with-http_ssl_module --with-http_v2_module \
                 --with-http_realip_module --with-http_auth_request_module \
                 --with-http_slice_module --with-http_sub_module \
                 --with-http_addition_module --with-http_gunzip_module \
                 --with-http_gzip_static_module \
                 --with-http_stub_status_module \
                 --with-http_image_filter_module=dynamic
OTHER_TESTS   ?= $(filter-out t/08-make-run.t t/33-deb.t,$(sort $(wildcard t/*.t)))
OTHER_PACKAGES := git libgd-dev

other-deps: deps
	@test -n "$(NGINX_VERSION)" || { echo "set NGINX_VERSION, as in" \
	    "make NGINX_VERSION=1.28.3 $(MAKECMDGOALS)" >&2; exit 1; }
	@$(call install-missing,$(OTHER_PACKAGES))

$(OTHER_SRC)/src/core/nginx.h: | other-deps
	rm -rf $(OTHER_SRC) $(OTHER_SRC).tmp
	mkdir -p $(OTHER_SRC).tmp
	if [ -d "$(NGINX_GIT)" ]; then \
	    git -C "$(NGINX_GIT)" archive release-$(NGINX_VERSION) \
	        | tar -x -C $(OTHER_SRC).tmp; \
	elif [ -n "$(NGINX_GIT)" ]; then \
	    rmdir $(OTHER_SRC).tmp && git clone -q --depth 1 \
	        --branch release-$(NGINX_VERSION) "$(NGINX_GIT)" \
	        $(OTHER_SRC).tmp; \
	else \
	    curl -fsSL https://nginx.org/download/nginx-$(NGINX_VERSION).tar.gz \
	        | tar -xz --strip-components=1 -C $(OTHER_SRC).tmp; \
	fi
	grep -q '"$(NGINX_VERSION)"' $(OTHER_SRC).tmp/src/core/nginx.h
	mv $(OTHER_SRC).tmp $(OTHER_SRC)

# the tarball has ./configure, the git tree auto/configure
$(OTHER_SRC)/objs/Makefile: config $(OTHER_SRC)/src/core/nginx.h
	cd $(OTHER_SRC) && { test -x ./configure && c=./configure \
	    || c=auto/configure; } && \
	    $$c --prefix=$(CURDIR)/$(OTHER) $(OTHER_FLAGS) \
	        --add-dynamic-module=$(CURDIR) > ../configure.log 2>&1 \
	    || { tail -20 $(OTHER)/configure.log; exit 1; }

$(OTHER)/modules/ngx_http_sf_oauth_module.so: $(OTHER_SRC)/objs/Makefile \
                                              $(SOURCES)
	$(MAKE) -C $(OTHER_SRC) -f objs/Makefile
	mkdir -p $(OTHER)/modules
	cp $(OTHER_SRC)/objs/nginx $(OTHER)/nginx.tmp
	mv -f $(OTHER)/nginx.tmp $(OTHER)/nginx
	for m in ngx_http_image_filter_module ngx_http_sf_oauth_module; do \
	    cp $(OTHER_SRC)/objs/$$m.so $(OTHER)/modules/$$m.so.tmp && \
	    mv -f $(OTHER)/modules/$$m.so.tmp $(OTHER)/modules/$$m.so \
	    || exit 1; \
	done

other-nginx: other-deps $(OTHER)/modules/ngx_http_sf_oauth_module.so
	@$(OTHER)/nginx -V 2>&1 | head -1

test-other-nginx: other-deps node-deps other-nginx
	TEST_NGINX_BINARY=$(CURDIR)/$(OTHER)/nginx \
	TEST_NGINX_MODULE=$(CURDIR)/$(OTHER)/modules/ngx_http_sf_oauth_module.so \
	TEST_NGINX_MODULES_DIR=$(CURDIR)/$(OTHER)/modules \
	    prove $(OTHER_TESTS)

clean:
	rm -rf $(BUILD)
