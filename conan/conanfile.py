"""Conan 2 recipe for seqrec, a header-only C++20 library (SASRec-family recommenders).

The package is what `cmake --install` produces: the headers and seqrec's own
seqrecConfig.cmake, which find_dependency()s Eigen3, OpenMP, nlohmann_json, fmt and Boost.
Consumers therefore use it exactly like a plain install: find_package(seqrec) and link
seqrec::seqrec (or seqrec::cuda with COMPONENTS cuda).

Where the dependencies come from:
  * default (with_conancenter_deps=False): the recipe declares no requires, so `conan create`
    works offline; the dependencies are found on the system (Debian: libeigen3-dev libfmt-dev
    nlohmann-json3-dev libboost-dev, and the compiler's OpenMP).
  * with_conancenter_deps=True: requires eigen, fmt, nlohmann_json and boost (headers only)
    from ConanCenter; CMakeDeps generates their config files and seqrecConfig.cmake finds
    those instead. OpenMP still comes from the compiler.

    conan create conan/ -s compiler.cppstd=20 --build=missing --no-remote        # offline
    conan create conan/ -s compiler.cppstd=20 --build=missing -o "seqrec/*:with_conancenter_deps=True"
"""
import os
import re

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load


class SeqrecConan(ConanFile):
    name = "seqrec"
    description = "Header-only C++20 library for SASRec-family sequential recommenders"
    topics = ("recommender-systems", "transformer", "sasrec", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    options = {"with_conancenter_deps": [True, False]}
    default_options = {
        "with_conancenter_deps": False,
        "boost/*:header_only": True,
    }
    no_copy_source = True

    def _source_root(self):
        # The recipe lives in conan/ of the repository; the sources are one level up.
        return os.path.join(self.recipe_folder, "..")

    def set_version(self):
        if self.version:
            return
        cmakelists = load(self, os.path.join(self._source_root(), "CMakeLists.txt"))
        m = re.search(r"project\(\s*seqrec\s+VERSION\s+([0-9.]+)", cmakelists)
        self.version = m.group(1)

    def export_sources(self):
        root = self._source_root()
        copy(self, "CMakeLists.txt", root, self.export_sources_folder)
        copy(self, "*", os.path.join(root, "include"), os.path.join(self.export_sources_folder, "include"))
        copy(self, "*", os.path.join(root, "cmake"), os.path.join(self.export_sources_folder, "cmake"))

    def requirements(self):
        if self.options.with_conancenter_deps:
            self.requires("eigen/3.4.0", transitive_headers=True)
            self.requires("fmt/10.2.1", transitive_headers=True, transitive_libs=True)
            self.requires("nlohmann_json/3.11.3", transitive_headers=True)
            self.requires("boost/1.84.0", transitive_headers=True)

    def validate(self):
        if self.settings.get_safe("compiler.cppstd"):
            check_min_cppstd(self, 20)

    def layout(self):
        cmake_layout(self)

    def generate(self):
        tc = CMakeToolchain(self)
        # Only the install rules: no tests, examples, benchmarks, and no CUDA probing.
        tc.cache_variables["SEQREC_BUILD_TESTS"] = False
        tc.cache_variables["SEQREC_BUILD_EXAMPLES"] = False
        tc.cache_variables["SEQREC_BUILD_BENCH"] = False
        tc.cache_variables["SEQREC_CUDA"] = "OFF"
        tc.cache_variables["SEQREC_INSTALL"] = True
        tc.generate()
        CMakeDeps(self).generate()

    def build(self):
        # Configuring checks that every dependency is found, as a consumer's find_package will.
        cmake = CMake(self)
        cmake.configure()

    def package(self):
        CMake(self).install()

    def package_id(self):
        self.info.clear()  # headers only: one package for every configuration and option

    def package_info(self):
        # Consumers use the installed seqrecConfig.cmake (builddirs puts its folder on
        # CMAKE_PREFIX_PATH through CMakeToolchain), not a CMakeDeps-generated one.
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.set_property("cmake_file_name", "seqrec")
        self.cpp_info.set_property("cmake_target_name", "seqrec::seqrec")
        self.cpp_info.builddirs = [os.path.join("share", "cmake", "seqrec")]
        self.cpp_info.includedirs = ["include"]
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        # For generators other than CMake (pkg-config, MSBuild ...): the OpenMP flag.
        if self.settings.get_safe("compiler") in ("gcc", "clang"):
            self.cpp_info.cxxflags = ["-fopenmp"]
            self.cpp_info.exelinkflags = ["-fopenmp"]
            self.cpp_info.sharedlinkflags = ["-fopenmp"]
