// keepsake/keepsake.hpp: everything in one include.
#pragma once

#include "keepsake/codec.hpp"
#include "keepsake/error.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/log.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/version.hpp"
