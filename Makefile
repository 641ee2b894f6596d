# Builds and installs vmta's C library: the shared library with its soname and links, the static
# library, the header and a pkg-config file.
#
#   make install PREFIX=/usr/local          # cargo build --release, then install under PREFIX
#   make install PREFIX=/tmp/p PROFILE=debug
#   make install DESTDIR=/tmp/stage PREFIX=/usr   # staged, for packagers
#   make uninstall PREFIX=/usr/local
#
# Then: cc prog.c $(pkg-config --cflags --libs vmta), or --static for libvmta.a (see docs/ffi.md).

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=
PROFILE ?= release
CARGO ?= cargo

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
MAJOR := $(word 1,$(subst ., ,$(VERSION)))
MINOR := $(word 2,$(subst ., ,$(VERSION)))
SONAME := $(if $(filter 0,$(MAJOR)),libvmta.so.0.$(MINOR),libvmta.so.$(MAJOR))
BUILT := target/$(PROFILE)

.PHONY: all build install uninstall

all: build

build:
	$(CARGO) build -q -p vmta-ffi $(if $(filter release,$(PROFILE)),--release,)

install: build
	install -d "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(INCLUDEDIR)" "$(DESTDIR)$(PKGCONFIGDIR)"
	install -m 0755 "$(BUILT)/libvmta.so" "$(DESTDIR)$(LIBDIR)/libvmta.so.$(VERSION)"
	ln -sf "libvmta.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/$(SONAME)"
	ln -sf "$(SONAME)" "$(DESTDIR)$(LIBDIR)/libvmta.so"
	install -m 0644 "$(BUILT)/libvmta.a" "$(DESTDIR)$(LIBDIR)/libvmta.a"
	install -m 0644 include/vmta.h "$(DESTDIR)$(INCLUDEDIR)/vmta.h"
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' ffi/vmta.pc.in >"$(DESTDIR)$(PKGCONFIGDIR)/vmta.pc"

uninstall:
	rm -f "$(DESTDIR)$(LIBDIR)/libvmta.so.$(VERSION)" "$(DESTDIR)$(LIBDIR)/$(SONAME)" \
	    "$(DESTDIR)$(LIBDIR)/libvmta.so" "$(DESTDIR)$(LIBDIR)/libvmta.a" \
	    "$(DESTDIR)$(INCLUDEDIR)/vmta.h" "$(DESTDIR)$(PKGCONFIGDIR)/vmta.pc"
