# The Debian package: `cmake --build build --target package` writes build/deploy-sentinel_*.deb.
# Installed: /usr/bin/deploy-sentinel, its unit in /lib/systemd/system, the example config as the
# conffile /etc/deploy-sentinel/config.toml, a man page made from --help, the polkit and sudoers
# examples under /usr/share/doc. Runtime dependencies come from dpkg-shlibdeps.

include(GNUInstallDirs)
set(pkg_doc share/doc/deploy-sentinel)
set(pkg_dir ${CMAKE_SOURCE_DIR}/packaging)

install(FILES ${pkg_dir}/deploy-sentinel.service DESTINATION /lib/systemd/system)
install(FILES ${pkg_dir}/config.toml DESTINATION /etc/deploy-sentinel)
install(FILES ${pkg_dir}/debian/copyright ${pkg_dir}/README.systemd DESTINATION ${pkg_doc})
install(FILES ${pkg_dir}/polkit/50-deploy-sentinel.rules DESTINATION ${pkg_doc}/examples/polkit)
install(FILES ${pkg_dir}/sudoers/deploy-sentinel DESTINATION ${pkg_doc}/examples/sudoers)
install(FILES ${CMAKE_SOURCE_DIR}/examples/botical.toml DESTINATION ${pkg_doc}/examples)
install(FILES ${pkg_dir}/debian/lintian-overrides DESTINATION share/lintian/overrides RENAME deploy-sentinel)

# Debian wants its changelog compressed reproducibly (gzip -n: no name, no time stamp).
configure_file(${pkg_dir}/debian/changelog.in ${CMAKE_BINARY_DIR}/changelog.Debian @ONLY)
find_program(GZIP gzip REQUIRED)
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/changelog.Debian.gz
  COMMAND ${GZIP} -9nfk ${CMAKE_BINARY_DIR}/changelog.Debian
  DEPENDS ${CMAKE_BINARY_DIR}/changelog.Debian)

# The man page is --help, as help2man lays it out; made at build time (a few ms) so that it
# never goes stale. Without help2man the package has no man page, and says so here.
find_program(HELP2MAN help2man)
set(pkg_generated ${CMAKE_BINARY_DIR}/changelog.Debian.gz)
if(HELP2MAN)
  add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/deploy-sentinel.1.gz
    COMMAND ${HELP2MAN} --no-info --section=1 --source=deploy-sentinel
            "--name=safe deploys for a self-modifying service"
            --output=${CMAKE_BINARY_DIR}/deploy-sentinel.1 $<TARGET_FILE:deploy-sentinel>
    COMMAND ${GZIP} -9nf ${CMAKE_BINARY_DIR}/deploy-sentinel.1
    DEPENDS deploy-sentinel
    COMMENT "Generating the man page from deploy-sentinel --help"
    VERBATIM)
  list(APPEND pkg_generated ${CMAKE_BINARY_DIR}/deploy-sentinel.1.gz)
  install(FILES ${CMAKE_BINARY_DIR}/deploy-sentinel.1.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
else()
  message(WARNING "help2man not found: the package will have no man page (apt-get install help2man)")
endif()
add_custom_target(package-docs ALL DEPENDS ${pkg_generated})
install(FILES ${CMAKE_BINARY_DIR}/changelog.Debian.gz DESTINATION ${pkg_doc})

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME deploy-sentinel)
set(CPACK_PACKAGE_VENDOR "The deploy-sentinel authors")
set(CPACK_PACKAGE_CONTACT "deploy-sentinel authors <deploy-sentinel@example.invalid>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)  # a Debian revision: not a native package
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE https://example.invalid/deploy-sentinel)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "safe deploys for a self-modifying service")
# CPack puts the summary on the first line of Description: itself.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "deploy-sentinel watches a marker directory with inotify and restarts a
production service when the AI agent inside it stages a deploy: never during
the agent's cycle, verifying health afterwards, and reverting to the last
known-good commit when the new one is unhealthy. It runs as a Type=notify
systemd service with a watchdog and logs to the journal with structured
fields.")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser, git")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "polkitd")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${pkg_dir}/debian/postinst ${pkg_dir}/debian/prerm ${pkg_dir}/debian/postrm ${pkg_dir}/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# Only the daemon goes into the package, not the test helpers.
set(CPACK_INSTALL_CMAKE_PROJECTS "${CMAKE_BINARY_DIR};${PROJECT_NAME};ALL;/")
include(CPack)
