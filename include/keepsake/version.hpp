// keepsake/version.hpp
#pragma once

#define KEEPSAKE_VERSION_MAJOR 0
#define KEEPSAKE_VERSION_MINOR 1
#define KEEPSAKE_VERSION_PATCH 0
