// Only the include: what <keepsake/keepsake.hpp> costs a file that uses
// nothing of it. bench/build_cost.sh times its compile.
#include <keepsake/keepsake.hpp>

int main() {}
