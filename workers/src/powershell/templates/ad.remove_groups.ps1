$user = Get-StewardAdUser -Identity ([string]$p.member)
$has = @($user.MemberOf | ForEach-Object { [string]$_ })
$removed = New-Object System.Collections.ArrayList
$StewardPrior = [ordered]@{ removed = $removed }
foreach ($groupId in @($p.groups)) {
    $group = Get-ADGroup @StewardAd -Identity ([string]$groupId)
    if ($has -notcontains [string]$group.DistinguishedName) { continue }
    Remove-ADGroupMember @StewardAd -Identity ([string]$group.DistinguishedName) -Members ([string]$user.DistinguishedName) -Confirm:$false
    $null = $removed.Add([string]$group.DistinguishedName)
}
$status = 'unchanged'
if ($removed.Count -gt 0) { $status = 'changed' }
return (Out-StewardResult -Status $status -Result ([ordered]@{ member = [string]$user.DistinguishedName; removed = $removed }) -Prior $StewardPrior)
