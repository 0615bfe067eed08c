# ngx_http_sf_oauth_module
#
#   make          build build/ngx_http_sf_oauth_module.so for Debian's nginx
#   make test     install what is missing, build, run t/*.t with prove
#   make run      start nginx with conf.example against the mock Salesforce
#                 (or a real org when the SF_* variables are set)
#   make deb      build build/deb/libnginx-mod-http-sf-oauth_<version>_<arch>.deb

NGINX       ?= /usr/sbin/nginx
NGINX_SRC   ?= /usr/share/nginx/src
BUILD       := build
MODULE      := $(BUILD)/ngx_http_sf_oauth_module.so
OBJS        := $(BUILD)/nginx/objs

DEB_PACKAGES := nginx nginx-dev libcurl4-openssl-dev libcjson-dev libssl-dev \
                libpcre2-dev zlib1g-dev gcc make perl python3 curl procps \
                ca-certificates nghttp2-client openssl \
                libnginx-mod-http-image-filter libxml2-dev python3-zeep \
                redis-server libhiredis-dev prometheus

# make deb and t/33-deb.t: debian/control's Build-Depends, the build tools,
# lintian
DEB_PACKAGES += build-essential debhelper dpkg-dev fakeroot lintian \
                libhiredis-dev

SOURCES := config ngx_http_sf_oauth_module.c $(wildcard src/*.c src/*.h)

.PHONY: all deps node-deps test test-valgrind fuzz fuzz-deps bench run deb clean

all: $(MODULE)

# Installs the Debian packages that are missing; nothing when all are there.
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
	        | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	        >/dev/null || exit 1; \
	fi

# jsforce, the Node.js client the SOAP and Bulk tests run, into
# build/node (outside git); Debian's nodejs and npm when there is no npm.
node-deps:
	@command -v npm >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm \
	    >/dev/null; }
	@sh t/lib/install-node-deps.sh

# nginx's configure tree from nginx-dev, configured with the flags Debian's
# binary was built with, so that the module's signature matches it.
$(OBJS)/Makefile: config | deps
	rm -rf $(BUILD)/nginx
	mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(BUILD)/nginx
	cd $(BUILD)/nginx && bash -c '. ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --add-dynamic-module=$(CURDIR)' > ../configure.log 2>&1 \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(OBJS)/Makefile $(SOURCES)
	$(MAKE) -C $(BUILD)/nginx -f objs/Makefile modules
	@# a new inode: a running nginx keeps the old file mapped intact
	cp $(OBJS)/ngx_http_sf_oauth_module.so $@.tmp && mv -f $@.tmp $@

test: deps node-deps $(MODULE)
	prove -r t/

# the same suite with every nginx process under valgrind
test-valgrind: deps node-deps $(MODULE)
	@command -v valgrind >/dev/null || { apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind \
	    >/dev/null; }
	SF_TEST_VALGRIND=1 prove -r t/

# libFuzzer targets for the token response parser, the state file reader,
# the SOAP envelope rewriter and the error-body verdict, built with clang, ASan and UBSan against a small stand-in for
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
               src/ngx_http_sf_oauth_codec.c \
               src/ngx_http_sf_oauth_envelope.c \
               src/ngx_http_sf_oauth_verdict.c \
               src/ngx_http_sf_oauth_send.c
FUZZ_TARGETS := parse state envelope verdict

$(BUILD)/fuzz_%: fuzz/fuzz_%.c $(FUZZ_SRCS) src/ngx_http_sf_oauth.h \
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

# wrk A/B against plain proxy_pass, a revoke storm and a soak; writes
# bench/results.md (about 3 minutes)
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

$(DEB): $(SOURCES) README.md conf.example $(shell find debian -type f) | deps
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/src
	cp -r --parents $(SOURCES) README.md conf.example debian $(DEB_DIR)/src/
	cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc \
	    > ../build.log 2>&1 || { tail -30 ../build.log; exit 1; }
	@echo "make deb: $@"

clean:
	rm -rf $(BUILD)
